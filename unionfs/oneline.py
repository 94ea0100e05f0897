"""What an exception says, in one line: how a daemon's or a served
command's failure is told to the one who asked."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
