"""HTTP plumbing shared by the API and the web console: route declarations,
who is calling (authentication), middlewares, the slow-client guard, the
OpenAPI generator and the typed keys under which handlers find HQ's parts."""
