//! AdaptFormer: not implemented yet.
