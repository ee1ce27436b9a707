from hatac.cli import app

app(prog_name="hatac")
