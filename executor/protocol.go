package executor

// The environment gitlab-runner's custom executor gives berth, by name: the
// only place berth spells them.
const (
	// EnvJobResponse is the file that holds the job's payload (every
	// stage).
	EnvJobResponse = "JOB_RESPONSE_FILE"
	// EnvBuildExitCodeFile is where run writes a failed script's exit
	// code, for allow_failure: exit_codes.
	EnvBuildExitCodeFile = "BUILD_EXIT_CODE_FILE"
	// EnvBuildFailureExitCode and EnvSystemFailureExitCode are the exit
	// codes that say whose fault a failure is.
	EnvBuildFailureExitCode  = "BUILD_FAILURE_EXIT_CODE"
	EnvSystemFailureExitCode = "SYSTEM_FAILURE_EXIT_CODE"
	// EnvJobVarPrefix prefixes the job's variables, which the job sets
	// itself: never trusted.
	EnvJobVarPrefix = "CUSTOM_ENV_"
	// EnvProjectDir is where the runner says it checked the sources out. A
	// job can set CI_PROJECT_DIR, so berth uses it only below the job's own
	// builds dir (which berth names from the payload's job id).
	EnvProjectDir = EnvJobVarPrefix + "CI_PROJECT_DIR"
)
