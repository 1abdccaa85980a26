from epm_approval.app import run

run()
