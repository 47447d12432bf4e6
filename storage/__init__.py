"""Redis storage for herd: key schema, Lua scripts and the store."""
