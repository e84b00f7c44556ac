"""The project's common library: subjects, message schemas, audio codecs, settings, logging."""
