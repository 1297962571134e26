"""Content only the parties can read, and its erasure (issue 17; docs/decisions/0021-sealed-content.md).

sealing.py: the cryptography, pure (AES-256-GCM for content, an X25519 box for wrapping data keys).
keystore.py: the wrapped keys in the bus (KV bucket REFBUS_CHILD_KEYS, outside the log), erasure.
content.py: what a gateway or an auditor does with them (seal a referral's content, open it).
"""
