"""The local control edge: the admin commands run on the HQ machine against its
data directory (`fieldlink init`, tokens, users, revocations) and the control
socket through which they tell a running HQ what it must act on at once."""
