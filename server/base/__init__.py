"""Foundation modules every layer of HQ may use: the typed audit events and the
Prometheus metrics. They import nothing else of server/."""
