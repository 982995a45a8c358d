//! VPT-Shallow and VPT-Deep: not implemented yet.
