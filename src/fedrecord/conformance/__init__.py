"""The conformance suite: black-box tests that any fedrecord node can be pointed at.

``fedrecord-conformance --target URL --patient-seed HEX`` (or ``--launch CMD``)
runs the cases of :mod:`.cases` against a patient node started as
spec/conformance.md says.  Each case names the spec requirements it checks
(:mod:`.registry`); ``--coverage`` counts the MUST requirements they reach
(:mod:`.coverage`); results go to the terminal, JUnit XML and JSON
(:mod:`.reports`).  The suite plays every other node itself (:mod:`.actors`),
speaks HTTP by hand so that any part of a request can be wrong on purpose
(:mod:`.wire`), and reaches the states it attacks through the steps of
:mod:`.session`.
"""
