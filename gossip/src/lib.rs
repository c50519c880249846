//! Sans-IO gossip.
