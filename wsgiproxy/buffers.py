"""How many bytes move at a time: one figure for every relay in the proxy.

Standard library free and import free, so the gunicorn adapter (also imported by the
master) and the upstream client can share it.
"""

#: Bytes read or sent per step of a body relay (request bodies, responses, tunnels,
#: WebSocket), the longest body sent together with a response head, and the start of a
#: request body kept for a replay (the contract's 64 KiB): bounded memory, few system
#: calls.
BLOCK = 64 * 1024
