"""The development kit: a Twilio-faithful call simulator and local fakes of the providers.

What ``voiceagent call``, ``voiceagent fakes`` and ``voiceagent up --providers cloud`` use, and
what the tests and benchmarks build on. Installed for development (the ``dev`` extra carries
its dependencies); not in the production image.
"""
