//! A2A: the agent card, the JSON-RPC task endpoint, discovery of peer agents, delegation.
//!
//! Contract: nothing here yet.
