"""digest: self-hosted email digests of what is new, per reader, delivered correctly.

The map, in the direction of the imports. `tests/test_architecture.py` holds the same arrows as a
table, one row per module, so a new sideways import fails the suite.

    __main__ ─► cli ─► service ─► web, scheduler
    fronts (cli, web, scheduler, service) ─► domain operations ─► edges, pure core ─► leaves

Leaves (import nothing above them):
    errors      the exception tree
    models      tables and status enums
    config      the TOML config and DIGEST_* overrides, read once into frozen values
    alerting    where detectors hand an alert to the process's notifier (`raise_alert`)

Pure core (no session, socket, environment or clock; `now` is a parameter):
    schedule    due times from cron expressions over local calendar dates; schedules described
    selection   which new articles a digest holds
    views       what templates are given and give back
    rendering   Jinja2 templates → subject, HTML (premailer, once per edition) and text
      palette, display_text, email_samples   colours, text as readers see it, template samples
    personal    what differs per reader in a shared edition (token, name, dates) and markers no
                content can forge
    messages    message bytes: shared headers once per edition, per-reader assembly
    tokens      subscription tokens and VERP return paths
    extract     canonical URLs, fingerprints, sanitizing, boilerplate trimming, summaries
    source_items  one article as a source describes it, made a NewArticle (trimmed, sanitized, dated)
    feeds       RSS, Atom and JSON Feed bytes → source items (encodings repaired, entities refused)
    article_files  .txt, .md (front matter) and .html article files → source items
    bounce_reasons  enhanced status codes and providers' phrasings, each with its class and reason, as data
    bounce_rules  a failure's class and reason from the most specific evidence; scoring; complaint rates
    inbound_mail  reading mail that may be broken anywhere (any bytes, any charset); the verdict shapes
    inbound_dsn   RFC 3464 DSNs block by block, and other MTAs' text bounces (flufl.bounce)
    inbound_feedback  complaints (ARF, Microsoft JMRP) and providers' JSON notices
    inbound     what a message at the bounce inbox means: the order of the above, auto-replies, unparsed
    topic_rules which of a list's topics an article belongs to (whole words, headline first)
    same_story  near-duplicate stories across sources, folded into one ("Also reported by")

Edges (never import the domain or the fronts):
    store/      engines and transactions; every query, named, in one room per domain:
                migrate, sources, compose, topics, readers, ledger, inbound, reports, retention
    ingest      fetch sources: feeds over HTTP (limits, conditional GET) or from files, article folders
    smtp        aiosmtplib connections that send exactly the given bytes
    capture     the embedded SMTP server that stores mail as .eml files
    dkim_sign   DKIM keys and signing of the final bytes
    previews    PNG previews of rendered mail through a headless browser

Domain operations (each about one thing; lower ones never import higher ones):
    bootstrap   the App: config, database, templates and keys, opened once per process
    readers     addresses, preferences, consent, subscribe and unsubscribe (also by mail)
    signup_form what a signup form says, cleaned and checked
    welcome     the mail after confirming: what comes next, in the reader's zone
    signup      double opt-in: confirmation mail (web and operator), confirm tokens, stale signups
    preferences the reader's own page: preferences, leaving one list or all, coming back
    topics      a list's topics: matched at ingest, re-matched on demand, each reader's choice
    sources     ingest every configured source, one broken source never stopping the rest
    stories     sources as readers know them; every new story of an edition ("and N more")
    compose     the one place a draft becomes an edition (digests and test sends)
    editions    pause, resume, cancel and resend
    relays      failover between relays and an adaptive rate per relay (per process)
    assembly    one reader's message bytes from the edition's template, DKIM-signed if configured
    outcomes    what a send means for the ledger, committed in groups; the circuit breaker
    delivery    the worker: one task group of feeder, connections, writer and lease renewal;
                re-reads each row before sending, waits out database outages, stops cleanly
    bounce_outcomes  what applying an inbound message produces; raw bytes in events; remembered messages
    complaints  applying a complaint; per-edition and per-day complaint rates: warn, or pause and alert
    bounces     applying inbound messages, a chunk at a time: bounce, score, auto-reply, unparsed; raw trim
    bounce_mailboxes  the new messages of a Maildir (then marked seen) or an mbox (read incrementally)
    bounce_listener   the bounce inbox: the SMTP listener for bounces+ and unsub+ mail
    bounce_admin      the bounce report by class and domain; lifting a suppression
    readers_io  subscriber CSV import and export
    retention   prune (batched, per [retention]) and erasure on request
    alerts      operator alerts by email and webhook, one per kind per window
    reports     what status, editions, lists, the admin page and /metrics show, gathered once
    doctor      configuration, database, relay, DKIM and DNS alignment checks
    observability  Prometheus metrics from the reports, JSON logs

Fronts:
    cli         the Typer root app and its sub-apps
    web         the FastAPI app, one router per area: reader pages, archive, operator API,
                admin, health (guard: limits and headers; csrf; signup rate limits)
    scheduler   APScheduler wiring only
    service     the long-running processes: each part supervised and restarted with back-off
"""
