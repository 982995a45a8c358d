//! The text log receives what the console gets (its own binary: the subscriber is process-global).

#[test]
fn log_lines_reach_the_run_log_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("run.log");
    vpetl_core::logging::init_with_file("info", &file).unwrap();
    tracing::info!("trainable params: 42");
    tracing::debug!("not at info level");
    let mut progress = vpetl_core::logging::Progress::new("epoch 1", 3);
    for _ in 0..3 {
        progress.inc(1);
    }
    progress.finish();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("trainable params: 42"), "{text}");
    assert!(!text.contains("not at info level"), "{text}");
    // Without a terminal the progress falls back to log lines (the last step always logs).
    assert!(text.contains("epoch 1: 3/3"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes in the file log: {text:?}");
}
