"""deploy/ is also the package refbus.deploy, so that an installed refbus ships its server configs
(services/runtime/embedded.py starts nats-server with nats-server.conf from here)."""
