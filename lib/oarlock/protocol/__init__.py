"""Sailor's wire contract, no I/O: messages, crypto, events, headers, settings, outgoing encoding."""
