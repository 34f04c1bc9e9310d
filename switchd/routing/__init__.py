"""Routing: the router answering mod_xml_curl lookups, the rate decks it reads (deck_loader)
and the live health and spend books it consults on every call."""
