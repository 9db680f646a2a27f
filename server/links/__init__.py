"""Live links to agents: the registry of connected agents (one SSH connection
each) and dispatch of HQ->agent requests over them. The SSH gateway fills the
registry; the engine reaches agents through it without importing the gateway."""
