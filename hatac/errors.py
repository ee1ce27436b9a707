"""Errors a user can act on."""


class HatacError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class SettingError(HatacError):
    """A setting out of range. Its message names the setting as Python spells it (``dense_layers must be
    >= 0``); the CLI prints it with the flag instead (``--dense-layers must be >= 0``)."""

    def __init__(self, setting: str, detail: str):
        self.setting, self.detail = setting, detail
        super().__init__(f"{setting} {detail}")

    def cli_message(self) -> str:
        return f"--{self.setting.replace('_', '-')} {self.detail}"
