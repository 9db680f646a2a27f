"""Who may do what: permissions, roles, bindings (pure), passwords, tokens."""
