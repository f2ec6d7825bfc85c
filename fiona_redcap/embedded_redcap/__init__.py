"""An embedded REDCap-API-compatible server backed by SQLite: FIONA's default state store.

Everything else in FIONA reaches it only through PyCap over HTTP, exactly as it would reach a
real REDCap; see the README section "The embedded REDCap server" for what it implements.
"""
