"""Getting a finished record out: the report document, its formats, the spool and outbox,
and the transports (the logging API over HTTP, mail). Imports no part."""
