"""FIONA for REDCap: the research-imaging gateway's core library.

REDCap access, the data model, the pseudonymizer, forwarders, exports and the web app
live here; `scp` and `scheduler` are thin services on top of it.
"""

__version__ = "0.1.0"
