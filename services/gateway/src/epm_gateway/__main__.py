from epm_gateway.app import run

run()
