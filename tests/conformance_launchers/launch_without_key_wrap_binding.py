"""The reference node, except that the key wrap it makes for a fetch names another grant and purpose.

The wrap is still well formed, signed by the patient, sealed to the reader
and consistent inside and out ([WRAP-3] passes on its own terms), but it is
not bound to the receipt's grant and purpose as [API-23] says.
"""

from _broken import edit, serve

from fedrecord.node import patient

edit(
    patient.PatientNode._wrap_for,
    ("purpose=request.purpose,", 'purpose="research" if request.purpose != "research" else "treatment",'),
    ("grant=request.grant,", "grant=bytes(reversed(request.grant)),"),
)
serve()
