"""digest: self-hosted email digests of what is new, per reader, delivered correctly.

The map, in the direction of the imports (see tests/test_architecture.py):

    cli ─► service (web + scheduler + worker in one process), web, scheduler
    cli · web · scheduler · service ─► pipeline, db, config
    pipeline ─► selection · rendering · messages · tokens · schedule · extract   (pure core)
    pipeline ─► db · ingest · smtp · capture                                     (edges)
    everything ─► models · config · errors                                       (leaves)

Pure core (no session, socket, environment or clock; `now` is a parameter):
    schedule    due times from cron expressions over local calendar dates
    selection   which new articles a digest holds
    rendering   Jinja2 templates → subject, HTML (premailer, once per edition) and text
    messages    message bytes: shared headers once per edition, per-reader assembly
    tokens      subscription tokens and VERP return paths
    extract     canonical URLs, fingerprints, sanitizing, boilerplate trimming, summaries

Edges:
    db          engines, transactions, migrations and every query, named
    ingest      fetch and parse directory and feed sources
    smtp        aiosmtplib connections that send exactly the given bytes
    capture     the embedded SMTP server that stores mail as .eml files
    web         FastAPI pages: unsubscribe, preferences, archive, health
"""
