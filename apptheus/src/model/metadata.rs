//! What is known of a container beyond its processes: image, instance, Slurm job.

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Metadata {
    pub image: Option<String>,
    pub instance: Option<String>,
    pub slurm_job_id: Option<String>,
}
