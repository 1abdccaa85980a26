from epm_notify.app import run

run()
