"""Any value in any setting: valid settings, or one line naming what is wrong (ConfigError)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aivo_fl.config import ConfigError, Settings, load_settings

NAMES = sorted(name.upper() for name in Settings.model_fields)
VALUES = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_subnormal=False).map(str),
    st.sampled_from(["", "true", "false", "0", "-1", "1e400", "nan", "{}", "[]", '{"a": 1}', "postgresql://u:pw@h/d"]),
)


@given(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=4))
def test_settings_load_or_are_refused_in_one_line(values: dict[str, str]) -> None:
    try:
        settings = load_settings(**values)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("Invalid configuration: ") and "\n" not in message
        assert "pw@" not in message  # a URL's password is never shown
    else:
        assert isinstance(settings, Settings)
