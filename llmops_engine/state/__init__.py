"""Where the engine remembers things: artifacts and resource records (shared), journal (local)."""
