//! FacT-TT and FacT-TK: not implemented yet.
