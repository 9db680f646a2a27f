"""ITSM decisions, pure: ticket rules, run requirements, SLA and KPI
arithmetic, alert evaluation. Nothing here touches the database or network."""
