//! The event catalogue (docs/events.md).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One of the eleven event types, named `resource.action`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum EventType {
    #[serde(rename = "user.created")]
    UserCreated,
    #[serde(rename = "user.updated")]
    UserUpdated,
    #[serde(rename = "vehicle.created")]
    VehicleCreated,
    #[serde(rename = "vehicle.updated")]
    VehicleUpdated,
    #[serde(rename = "vehicle.deleted")]
    VehicleDeleted,
    #[serde(rename = "vehicle.added")]
    VehicleAdded,
    #[serde(rename = "vehicle.images_uploaded")]
    VehicleImagesUploaded,
    #[serde(rename = "vehicle.image_uploaded")]
    VehicleImageUploaded,
    #[serde(rename = "vehicle.processed")]
    VehicleProcessed,
    #[serde(rename = "image.cropped_processed")]
    ImageCroppedProcessed,
    #[serde(rename = "data.new")]
    DataNew,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::UserCreated,
        EventType::UserUpdated,
        EventType::VehicleCreated,
        EventType::VehicleUpdated,
        EventType::VehicleDeleted,
        EventType::VehicleAdded,
        EventType::VehicleImagesUploaded,
        EventType::VehicleImageUploaded,
        EventType::VehicleProcessed,
        EventType::ImageCroppedProcessed,
        EventType::DataNew,
    ];

    /// Event types an FtpConnection can act on: those that carry images, plus deletion.
    pub const FTP: [EventType; 5] = [
        EventType::VehicleProcessed,
        EventType::VehicleImagesUploaded,
        EventType::VehicleImageUploaded,
        EventType::ImageCroppedProcessed,
        EventType::VehicleDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserCreated => "user.created",
            EventType::UserUpdated => "user.updated",
            EventType::VehicleCreated => "vehicle.created",
            EventType::VehicleUpdated => "vehicle.updated",
            EventType::VehicleDeleted => "vehicle.deleted",
            EventType::VehicleAdded => "vehicle.added",
            EventType::VehicleImagesUploaded => "vehicle.images_uploaded",
            EventType::VehicleImageUploaded => "vehicle.image_uploaded",
            EventType::VehicleProcessed => "vehicle.processed",
            EventType::ImageCroppedProcessed => "image.cropped_processed",
            EventType::DataNew => "data.new",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown event type {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for t in EventType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), t);
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
        }
        assert!("vehicle.exploded".parse::<EventType>().is_err());
    }
}
