"""The job service: turns assignments recorded in REDCap into pseudonymized studies in the research PACS."""
