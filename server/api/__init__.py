"""The HTTPS API: routes declared with their permission, one error shape."""
