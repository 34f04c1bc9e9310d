"""Where keys of a provisioning file are: the line numbers provisioning errors carry."""
from switchd.admin.toml_lines import key_lines, line_of

TEXT = """# a comment
[[tenants]]
name = "a"
[[tenants]]
"name" = "b"   # quoted key

[[carriers]]
name = "x"
  [[carriers.gateways]]
  name = "gw1"
  [[carriers.gateways]]
  name = "gw2"
[[carriers]]
  [[carriers.gateways]]
  leg_timeout = 3
[delete]
tenants = ["old"]
"""


def test_array_tables_are_counted_per_parent_and_keys_found():
    lines = key_lines(TEXT)
    assert lines["tenants[0].name"] == 3
    assert lines["tenants[1].name"] == 5
    assert lines["carriers[0].gateways[1].name"] == 12
    assert lines["carriers[1].gateways[0]"] == 14          # gateways count again from 0
    assert lines["carriers[1].gateways[0].leg_timeout"] == 15
    assert lines["delete.tenants"] == 17


def test_a_path_not_in_the_file_falls_back_to_its_table():
    lines = key_lines(TEXT)
    assert line_of(lines, "carriers[1].gateways[0].name") == 14
    assert line_of(lines, "tenants[0].allowed_countries") == 2
    assert line_of(lines, "dids[0].number") is None
    assert line_of({}, "tenants[0].name") is None
