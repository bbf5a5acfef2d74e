"""Redis plumbing: the client, every key shape, the Lua scripts and the stream."""
