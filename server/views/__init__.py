"""Read models: what the API answers and the console renders about tickets,
problems, machines, sessions, changes, the knowledge base and the rest (the
pydantic `...Out` models) and the functions that load them within what the
caller may see. Both edges import these; neither imports the other."""
