from epm_audit.app import run

run()
