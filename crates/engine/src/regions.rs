//! Regions, availability zones and built-in images.

use crate::model::Image;

/// Every AWS commercial region: served by default so any script works whatever region it names.
pub const COMMERCIAL_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
];

/// Zone letters per region (ARCHITECTURE contracts: `<region>a|b|c`).
pub const ZONE_LETTERS: &[char] = &['a', 'b', 'c'];

pub fn zones(region: &str) -> Vec<String> {
    ZONE_LETTERS.iter().map(|l| format!("{region}{l}")).collect()
}

/// AWS-style zone id (`use1-az1`): a short region code and the zone's number.
pub fn zone_id(zone: &str) -> String {
    let (region, letter) = zone.split_at(zone.len().saturating_sub(1));
    let short: String = region
        .split('-')
        .enumerate()
        .map(|(i, part)| match i {
            0 => part.to_string(),
            _ => part.chars().next().map(String::from).unwrap_or_default(),
        })
        .collect();
    let n = letter.chars().next().map(|c| (c as u32).saturating_sub('a' as u32) + 1).unwrap_or(1);
    format!("{short}-az{n}")
}

pub const IMAGES: &[Image] = &[
    Image {
        id: "ami-0b5e4c3d2a1f00001",
        name: "blocksnap-linux-x86_64",
        description: "blocksnap built-in Linux image (8 GiB root volume at /dev/xvda)",
        architecture: "x86_64",
        root_device_name: "/dev/xvda",
        root_size_gib: 8,
        platform_details: "Linux/UNIX",
    },
    Image {
        id: "ami-0b5e4c3d2a1f00002",
        name: "blocksnap-linux-arm64",
        description: "blocksnap built-in Linux image for arm64 (8 GiB root volume at /dev/xvda)",
        architecture: "arm64",
        root_device_name: "/dev/xvda",
        root_size_gib: 8,
        platform_details: "Linux/UNIX",
    },
    Image {
        id: "ami-0b5e4c3d2a1f00003",
        name: "blocksnap-ubuntu-small",
        description: "blocksnap built-in small image (2 GiB root volume at /dev/sda1)",
        architecture: "x86_64",
        root_device_name: "/dev/sda1",
        root_size_gib: 2,
        platform_details: "Linux/UNIX",
    },
];

pub fn image(id: &str) -> Option<&'static Image> {
    IMAGES.iter().find(|i| i.id == id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn zone_ids() {
        assert_eq!(super::zone_id("us-east-1a"), "use1-az1");
        assert_eq!(super::zone_id("eu-west-2c"), "euw2-az3");
    }
}
