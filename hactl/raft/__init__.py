"""Consensus: the pure Raft core, its storage (raft.db) and its asyncio driver."""
