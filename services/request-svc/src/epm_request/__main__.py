from epm_request.app import run

run()
