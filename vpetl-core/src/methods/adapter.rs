//! Adapter (Houlsby / Pfeiffer): not implemented yet.
