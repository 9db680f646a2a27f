"""Operations shared by the API and the admin CLI: each one changes the
store and records it in the audit trail in the same transaction."""
