//! LoRand: not implemented yet.
