//! vehicle-connect: a Kubernetes operator that delivers vehicle-imaging events to clients'
//! systems as signed webhooks and FTP uploads.
