"""digest: self-hosted email digests of what is new, per reader, delivered correctly.

The map, in the direction of the imports (see tests/test_architecture.py):

    cli ─► service (web + scheduler + worker + inbox in one process), web, scheduler
    cli · web · scheduler · service ─► pipeline, delivery, signup, bounces, db, config
    pipeline · delivery · signup · bounces ─► the pure core and the edges
    everything ─► models · config · errors                                      (leaves)

Pure core (no session, socket, environment or clock; `now` is a parameter):
    schedule    due times from cron expressions over local calendar dates
    selection   which new articles a digest holds
    rendering   Jinja2 templates → subject, HTML (premailer, once per edition) and text
    messages    message bytes: shared headers once per edition, per-reader assembly
    tokens      subscription tokens and VERP return paths
    extract     canonical URLs, fingerprints, sanitizing, boilerplate trimming, summaries
    inbound     DSN / ARF / mailto parsing and bounce classification, soft-bounce scoring

Where the core meets the edges:
    pipeline    ingest, compose (set-based, exactly once), preview, test sends, editions
    delivery    the worker: leases, group-committed outcomes, failover, rate, circuit breaker
    signup      readers' operations: signup, confirm, preferences, unsubscribe, limits, purge
    bounces     applying bounces and complaints: suppression, scores, the inbox, reports
    readers_io  subscriber CSV import and export
    retention   prune (batched, per [retention]) and erasure on request
    alerts      operator alerts by email and webhook, one per kind per window
    reports     what status, editions, lists, the admin page and /metrics show, gathered once
    doctor      configuration, database, relay, DKIM and DNS alignment checks
    observability  Prometheus metrics from the reports, JSON logs

Edges:
    db          engines, transactions, migrations and every query, named
    ingest      fetch and parse directory and feed sources
    smtp        aiosmtplib connections that send exactly the given bytes
    capture     the embedded SMTP server that stores mail as .eml files
    web         FastAPI pages and the operator API (csrf: signed form tokens)
    scheduler   APScheduler wiring only
"""
