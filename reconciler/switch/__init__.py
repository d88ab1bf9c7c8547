"""The switch layer: snapshot entries <-> P4Runtime messages (translate), and one P4Runtime
session per switch (session). The two-switch transaction is built on top, elsewhere."""
