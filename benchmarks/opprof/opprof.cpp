// A per-operator time table for any process that runs libtorch: ours or the Python reference.
//
// Preloaded (benchmarks/opprof/run.sh), it registers a global RecordFunction callback, so every
// ATen operator and autograd node is timed, and at exit writes one line per name: total wall time
// (inclusive of the operators it calls), calls, name. Nested calls are indented by one level, so a
// table reads as "aten::linear, and inside it aten::addmm". Times include the callback's own cost
// (about a microsecond per call), the same on both sides. With OPPROF_PARENTS=1 each line is named
// "caller > operator" instead, to find who calls an operator (a copy, say).

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Total {
  double ns = 0;
  long calls = 0;
};

std::unordered_map<std::string, Total>* totals;
std::mutex totals_mutex;
thread_local int depth = 0;
thread_local std::vector<std::string> callers;  // the names entered on this thread, innermost last
bool by_parent = false;

struct Started : at::ObserverContext {
  std::chrono::steady_clock::time_point at;
  int depth;
};

std::unique_ptr<at::ObserverContext> on_enter(const at::RecordFunction& fn) {
  if (by_parent) callers.emplace_back(fn.name());
  auto s = std::make_unique<Started>();
  s->at = std::chrono::steady_clock::now();
  s->depth = depth++;
  return s;
}

void on_exit(const at::RecordFunction& fn, at::ObserverContext* ctx) {
  auto* s = static_cast<Started*>(ctx);
  depth--;
  double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - s->at).count();
  std::string name = (s->depth == 0 ? "" : "  ") + std::string(fn.name());
  if (by_parent) {
    callers.pop_back();
    name = (callers.empty() ? std::string("(top)") : callers.back()) + " > " + fn.name();
  }
  std::lock_guard<std::mutex> lock(totals_mutex);
  Total& t = (*totals)[name];
  t.ns += ns;
  t.calls++;
}

__attribute__((constructor)) void start() {
  totals = new std::unordered_map<std::string, Total>();
  by_parent = std::getenv("OPPROF_PARENTS") != nullptr;
  at::addGlobalCallback(at::RecordFunctionCallback(on_enter, on_exit).needsInputs(false));
}

__attribute__((destructor)) void finish() {
  std::vector<std::pair<std::string, Total>> rows(totals->begin(), totals->end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  const char* path = std::getenv("OPPROF_OUT");
  FILE* out = path ? std::fopen(path, "w") : stderr;
  if (!out) return;
  for (const auto& [name, t] : rows) std::fprintf(out, "%10.2f ms %8ld  %s\n", t.ns / 1e6, t.calls, name.c_str());
  if (path) std::fclose(out);
}

}  // namespace
