"""``pycontainer``: the container runtime's command line (commands to come)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Run processes in containers whose root is a pyunion mount."""


def main() -> None:
    cli.main(prog_name="pycontainer")
